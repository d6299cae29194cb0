"""For learners: a text traced through every step of the forward, printed (trace), drawn (plots), shown in
an interactive page (html); and exercises that check themselves against the trace (exercises)."""
