"""The web console at ``/console``: server-rendered pages for people, acting only through the tools."""
