"""The documented REST API as data: each route names the tool that serves it."""
