"""For learners: a text traced through every step of the forward, printed and drawn."""
