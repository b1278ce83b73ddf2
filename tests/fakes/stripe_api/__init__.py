"""A local Stripe API for what the payment gateway uses: create-and-confirm and retrieve a PaymentIntent;
create, retrieve and expire a Checkout Session, and pay one as its payer would.

It is as strict as ``api.stripe.com``: whatever the real API refuses, this refuses with the real status and
error body, so a client that passes here has not been let off by a kind fake.

Each module lists the behaviours it reproduces and where each is sourced: ``server`` (requests, API keys,
``Idempotency-Key``, retrieve), ``params`` (the PaymentIntent create parameters), ``intents`` (confirming,
the test cards' outcomes), ``checkout_params`` (the Checkout Session create parameters), ``checkout`` (the
session object, expiring and paying it), ``cards`` (test cards, currencies, minimum amounts), ``state``
(what the fake knows and its knobs) and ``events`` (webhook bodies, signatures and deliveries).
"""
