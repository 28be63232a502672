"""Generic building blocks shared by the towers; nothing here knows about CLIP models."""
