"""Files in and out: array files, checkpoints (keras-hub, Hugging Face, native safetensors), the
hub (hf://, kaggle://, built-in names; cache and downloads) and the one atomic writer."""
