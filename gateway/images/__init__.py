"""Images: what a request may ask for (validation against the catalog, uploads), and where the
answers are kept (signed URLs over stored files)."""
