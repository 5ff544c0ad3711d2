"""The offline ReVision experiment: a generated world with paired images and captions, a small dual
encoder trained on it, and the chain embed → align → diagnose → train → caption → score."""
