"""The demo layer: the Gradio app (`app`) and its export as a Hugging Face Space (`space`)."""
