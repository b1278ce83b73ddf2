"""A local io.net Container-as-a-Service API: the paths, fields, statuses and errors of
``https://api.io.solutions/enterprise/v1/io-cloud/caas/*``.

Sources: io.net's API reference (io.net/docs/reference/caas/*), the official SDK ``ionet-cloud``
(``iocloud/types.py``) and clients of the same API (tokenrouter's Go client and its wire test). Each module
lists the behaviours it reproduces and which source settles each: ``server`` (the routes, authentication
and what each answers), ``validation`` (the deploy body's checks and io.net's error bodies), ``hardware``
(the hardware rows and locations) and ``state`` (what the fake knows and its knobs).

Serve ``ionet_app(IoNetState(...))`` (``server``, ``state``) with ``tests.conftest.serve``.
"""
