"""The lab: generation taken apart, step by step, for the web UI's Lab tab and for anyone in Python.

- `steps.watch`: the latents and the predicted clean image x̂₀ at every step, classifier-free
  guidance's two branches at a chosen step, and (with a digit guide) the guiding classifier's
  probability of the wanted digit at every step;
- `attention.attention_maps`: where each prompt word lands, from the UNet's cross-attention (DAAM);
- `xyplot.xy_grid`: a grid over two parameters, judged by the digit classifier on the digits model.
"""
