"""The Lab tab: one generation taken apart, step by step (`sdlab.lab.steps`, `sdlab.lab.attention`)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from sdlab.errors import InputError
from sdlab.service.worker import QueueFull, Worker
from sdlab.ui.fields import ModelSettings, follow_model, request_from, sampling_fields

INTRO = (
    "One generation taken apart. **Latents** are x_t after each step; **x̂₀** is the clean image the UNet "
    "predicts at that step. At the chosen step, the **unconditional**, **conditional** and **guided** "
    "predictions show classifier-free guidance at work. With a guide digit, the plot follows the guiding "
    "classifier's probability of that digit. **Attention** maps where each prompt word lands "
    "(cross-attention averaged over heads, layers and steps; DAAM)."
)


def build(worker: Worker, models: list[str], settings: ModelSettings) -> dict[str, Any]:
    gr.Markdown(INTRO)
    f = sampling_fields("lab", models, worker.registry.current, settings, batch=False)
    with gr.Row():
        guide_digit = gr.Dropdown(["none", *map(str, range(10))], value="none",
                                  label="Guide digit (gradient guidance)", elem_id="lab-guide")  # fmt: skip
        split_step = gr.Slider(
            1, 150, value=10, step=1, label="Step for the guidance split", elem_id="lab-split"
        )
    run_button = gr.Button("Watch", variant="primary", elem_id="lab-run")
    strip = dict(format="png", height=170, object_fit="contain", preview=False, elem_classes=["sdlab-pixels"])
    latents = gr.Gallery(label="Latents x_t, step by step", columns=10, elem_id="lab-latents", **strip)
    x0 = gr.Gallery(label="Predicted clean image x̂₀, step by step", columns=10, elem_id="lab-x0", **strip)
    with gr.Row():
        split = gr.Gallery(label="Guidance at one step", columns=3, elem_id="lab-split-images", **strip)
        plot = gr.Plot(label="Guiding classifier: p(digit) per step", elem_id="lab-plot")
    attention = gr.Gallery(label="Attention per word", columns=8, elem_id="lab-attention", **strip)

    def run(digit: str, step: int, *values: Any):
        from sdlab.lab.steps import watch

        request = request_from(values)
        if digit != "none":
            request = request.replace(guide_digit=int(digit))
        try:
            worker.limits.check(request)
            seen = worker.run(lambda w: watch(w.registry, request, split_step=int(step), attention=True))
        except (InputError, QueueFull) as err:
            raise gr.Error(worker.registry.public(str(err))) from None
        label = [f"step {f.step}{' (guided)' if f.guided else ''}" for f in seen.frames]
        branches = []
        if (s := seen.split) is not None:
            branches = [(s.unconditional, f"unconditional, step {s.step}"), (s.conditional, "conditional"),
                        (s.guided, "guided")]  # fmt: skip
        chart = (
            probability_plot(seen.digit_probability, request.guide_digit) if seen.digit_probability else None
        )
        return (list(zip([f.latents for f in seen.frames], label, strict=True)),
                list(zip([f.x0 for f in seen.frames], label, strict=True)), branches, chart,
                [(w.overlay, w.word) for w in seen.attention])  # fmt: skip

    run_button.click(
        run, inputs=[guide_digit, split_step, *f["inputs"]], outputs=[latents, x0, split, plot, attention]
    )
    follow_model(f, worker)
    return f


def probability_plot(probabilities: list[float], digit: int | None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 2.6))
    axis.plot(range(1, len(probabilities) + 1), probabilities, marker="o")
    axis.set(xlabel="step", ylabel=f"p(digit {digit} | x̂₀)", ylim=(-0.02, 1.02))
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure
