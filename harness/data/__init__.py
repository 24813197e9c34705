"""Reading inputs: media (images, videos, dataset rows), tabular files, Hugging Face datasets, predictions files."""
