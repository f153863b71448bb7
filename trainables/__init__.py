"""Ray Tune trainables: candidate trials and the final scratch-vs-fine-tune stage."""
