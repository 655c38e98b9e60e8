"""The application the documentation's examples use (``docs/examples`` on ``sys.path``)."""
