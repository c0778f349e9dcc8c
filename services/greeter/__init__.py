"""The Greeter server of the demo cluster: ``python -m services.greeter --port P``."""
