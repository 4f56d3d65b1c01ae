"""AI for inbound messages: classification, grounded reply drafts, embeddings, behind one small interface."""
