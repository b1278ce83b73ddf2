"""Serving an ONNX MLP over HTTP against peer stacks: run ``python -m bench.serving`` (see ``__main__``).

``stacks`` names the stacks and loads the peer kit, ``launch`` starts and stops servers, ``load`` drives them
with ``hey`` and measures the bare ``session.run`` floor, ``report`` prints the tables and checks the targets.
"""
