"""Payment gateways: the ``PaymentGateway`` protocol and its shared types (``base``), Stripe through its
official SDK (``stripe_gateway``), a sandbox that charges nothing (``sandbox``, development only), reading
Stripe's PaymentIntents (``intents``) and Checkout Sessions (``sessions``), and verifying Stripe-style
webhooks (``webhooks``)."""
