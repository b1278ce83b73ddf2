"""A local Stripe API for what the payment gateway uses: create-and-confirm and retrieve a PaymentIntent.

It is as strict as ``api.stripe.com``: whatever the real API refuses, this refuses with the real status and
error body, so a client that passes here has not been let off by a kind fake.

Each module lists the behaviours it reproduces and where each is sourced: ``server`` (requests, API keys,
``Idempotency-Key``, retrieve), ``params`` (the create parameters), ``intents`` (confirming, the test
cards' outcomes), ``cards`` (test cards, currencies, minimum amounts), ``state`` (what the fake knows and
its knobs) and ``events`` (webhook bodies and signatures).
"""
