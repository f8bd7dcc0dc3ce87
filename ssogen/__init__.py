"""ssogen: generate SSO preference datasets and publish them to the Hugging Face Hub."""

__version__ = "0.1.0"
