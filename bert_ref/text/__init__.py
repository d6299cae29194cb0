"""Text: the WordPiece tokenizer (with its Unicode tables) and sentence embeddings."""
