"""Request and response models (pydantic): the validated boundary of the API."""
