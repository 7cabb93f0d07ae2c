"""The embedded default (`spin demo`): a tiny Llama built offline (`tiny_model`), arithmetic word problems with
exact answers (`arithmetic`), and the driver that runs SPIN on them through the control plane (`driver`)."""
