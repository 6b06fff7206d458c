"""Session recordings: the asciicast format, the node's recorder and uploader, the store."""
