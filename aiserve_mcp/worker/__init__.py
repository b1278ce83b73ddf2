"""The worker: the process a rented instance (cloud or local) runs to serve a user's models."""
