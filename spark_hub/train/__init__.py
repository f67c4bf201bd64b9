"""Stage II/III training: SFT data for generative PRMs (`sft_data`); trainers come next."""
