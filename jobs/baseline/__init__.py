"""Continued SFT at equal compute (`continued_sft`): what the SFT model gains from more of plain SFT instead of
SPIN; and the supervised fine-tuning it runs (`sft`), which the demo also uses to make its SFT model."""
