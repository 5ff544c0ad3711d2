"""Embedding images and texts with a dual encoder into feature stores."""
