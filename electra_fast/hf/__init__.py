"""Hugging Face integration: the fused head inside any masked LM (`masked_lm`: patch_masked_lm), and Hugging
Face encoders as ELECTRA's generator and discriminator, with embedding sharing and their export (`encoders`)."""
