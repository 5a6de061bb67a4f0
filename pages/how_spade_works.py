"""How SPADE works: the idea and the algorithm in plain words, for a classroom."""

import dataclasses

import streamlit as st

from spade_app import benchmarks, sections
from spade_app.settings import WALKTHROUGH, sparsity_text
from spade_app.sidebar import require_selection

st.title("How SPADE works")

st.markdown(
    """
**The problem.** Saliency maps and neuron visualizations try to tell you *why* a network decided what it
did. They get confused by **multifaceted neurons**: a single neuron often responds to several unrelated
things (a "lighter" neuron may fire for a match head *and* for a flame). When you explain one image, every
other thing the network knows leaks into the explanation.

**The idea.** SPADE (Soltani Moakhar, Iofinova, Frantar, Alistarh, ICML 2024) removes that leak *for one
image at a time*. Before explaining, it prunes the trained network down to a very sparse sub-network — a
**trace** — that behaves like the full network on *this* image and on random variations of it, and then runs
the explanation method on the trace. The trained model itself is never changed and still makes the
prediction; the trace is only a pre-processing step for any explainer.
"""
)

st.graphviz_chart(  # two rows of three, so the diagram's text stays readable at the page's width
    """
digraph spade {
  rankdir=LR; ranksep=0.35; nodesep=0.35; newrank=true;
  node [shape=box, style="rounded,filled", fillcolor="#EEF3FA", fontname="sans-serif", fontsize=20];
  img [label="one image", fillcolor="#FDF2E3"];
  aug [label="1. augment\nrandom crops, flips,\ncolour jitter"];
  stats [label="2. layer statistics\non the dense model\n(Gram matrix per layer)"];
  solve [label="3. sparse solve\nper layer: keep a few\nweights, same outputs"];
  trace [label="trace\n(sparse copy)", fillcolor="#E6F4EA"];
  explain [label="4. explain\nsaliency / neuron\nvisualization"];
  model [label="trained model\n(unchanged)", fillcolor="#F3F3F3"];
  { rank=same; img; model; }
  { rank=same; aug; solve; }
  { rank=same; stats; trace; }
  img -> aug -> stats; stats -> solve [constraint=false]; solve -> trace -> explain;
  model -> solve [style=dashed]; model -> stats [style=dashed, constraint=false];
}
"""
)

st.markdown(
    """
### The four steps

1. **Augment.** Make a batch of random variations of the raw image: crops covering 20–100 % of it,
   horizontal flips, brightness and hue changes. The trace must work for all of them, so it captures what
   the network uses for *this object*, not for one exact pixel grid. (The authors used 256 in their back-door
   benchmark, 1024 in their demo and 10240 for insertion / deletion; this app starts at 64 on a CPU, which keeps
   the model's decision at the default sparsity on 7 of the 8 bundled photos: README, "Which sparsities keep the
   decision".)
2. **Record layer statistics.** Run the batch once through the **dense** (original) network. For every
   convolution and linear layer, add up how its inputs correlate with each other: a matrix
   *H = (2/n) Σ x xᵀ*. These numbers depend only on the image and the model, not on how sparse you want the
   trace, so trying another sparsity only repeats step 3.
3. **Solve a sparse least-squares problem per layer.** Each layer keeps only a small fraction of its
   weights (e.g. 10 % at sparsity 0.9) and the remaining weights are adjusted so the layer's outputs on the
   batch stay as close as possible to the original ones. FastSPADE does this column by column with the
   SparseGPT update (using *H*'s inverse to compensate each removed weight on the weights still to come).
   The first convolution and depthwise convolutions are left alone; biases and BatchNorm are untouched.
   Small errors add up from layer to layer, so on a photo whose two best classes nearly tie the trace can
   predict the other one. The Explore page can then fit the last layer once more, on the trace's *own*
   features, to give the dense model's class scores ("Refit the classifier on the trace"; not part of the
   paper). It keeps the decision, but the maps scored worse on insertion and deletion (insertion AUC lower
   by 0.5-0.75 points on 100 clean test crops and by 2.1 on 24 calibration crops) and lost SPADE's gain on
   the back-doored model, so it is off by default and "Keep the model's decision" lowers the sparsity instead.
4. **Explain.** Run any explanation method — Saliency, Integrated Gradients, GradCAM, LRP, a neuron
   visualization — on the trace, with the same image and the same target class, and compare with the
   same method on the dense model.

### How to tell the trace is faithful
- The trace's top-1 class on the image should equal the dense model's top-1 (the Explore page marks it
  clearly when it does not).
- Per layer, the **relative reconstruction error** ‖W_s X − W X‖² / ‖W X‖² on the augmentations should be
  small, and the **achieved sparsity** should match the target.

### Sparsity: one number or a profile
A single value (say 0.9) prunes every target layer equally. A **profile** gives each block its own
target; the authors tuned such profiles for ResNet-50 (e.g. 0.95 for the last blocks, 0 for a few middle
ones). Try both on the Explore page.
"""
)

st.markdown(
    """
### Does it help? What was measured
Two benchmarks ship with the repository (`python -m spade benchmark`, tables in `benchmarks/results/`).
**Trojan:** a back-doored model predicts *goose* whenever a heart is pasted into a photo, so the truth is
known, and a faithful saliency map must point at the heart (Trojan AUC, pointing game; the Trojan lab lets
you try it). The lab has two such models: one keeps its back door in channels of its own behind a gate; the
other got it as the paper's models did, by fine-tuning on stamped photos, so the heart works through neurons
that clean photos use too. **Insertion / deletion:** on clean photos, how fast the model's confidence returns
when the most salient pixels are put back first, and how fast it drops when they are removed first. In the
overviews, Δ is SPADE minus dense: positive means SPADE did better, except for deletion, where negative is better.
"""
)
trojan_says, insertion_says = benchmarks.conclusion_text("trojan"), benchmarks.conclusion_text("insertion")
if trojan_says or insertion_says:
    st.markdown("#### What the numbers say")
    if trojan_says:
        st.markdown(f"**Trojan:** {trojan_says}")
    if insertion_says:
        st.markdown(f"**Insertion / deletion:** {insertion_says}")
with st.expander("The benchmark tables", expanded=False):
    trojan_tab, insertion_tab = st.tabs(["Trojan (does the map point at the trigger?)",
                                         "Insertion / deletion (clean photos)"])
    with trojan_tab:
        benchmarks.runs_section("trojan", key="hw_trojan_run")
    with insertion_tab:
        benchmarks.runs_section("insertion", key="hw_insertion_run")

st.header("Walkthrough on your image")
st.caption(f"Uses the image and model chosen in the sidebar, with fixed classroom settings: "
           f"{WALKTHROUGH.augment.count} augmentations, {sparsity_text(WALKTHROUGH.sparsity)}, the model's default "
           "solver, GradCAM for the saliency step.")

sel = require_selection("run the walkthrough")
walkthrough = dataclasses.replace(WALKTHROUGH, solver=sel.loaded.spec.solver)
if not st.session_state.get("walkthrough_started"):
    start = st.empty()
    if not start.button("Start the walkthrough", type="primary", icon=":material/play_arrow:"):
        st.stop()
    start.empty()  # the button goes once the walkthrough runs
    st.session_state["walkthrough_started"] = True

st.subheader("Step 1 · The augmentation batch")
st.markdown("SPADE never looks at the image just once. It makes random crops, flips and colour changes of it, so "
            "the trace has to work for the object in the picture, not for one exact arrangement of pixels.")
sections.augmentation_strip(sel, walkthrough)

st.subheader("Step 2 · Statistics and the sparse solve")
st.markdown("The batch runs once through the full network while every layer's input correlations are recorded. "
            "Then each layer keeps only half of its connections, re-weighted so the layer's output on the batch "
            "changes as little as possible.")
trace = sections.run_trace(sel, walkthrough)
if trace is None:
    st.stop()
sections.layer_section(trace, sel.presentation, title=None)

st.subheader("Step 3 · Is the prediction kept?")
st.markdown("A trace is only useful if it still makes the same decision. Compare the two top-5 lists: the trace "
            "should agree on the top class; the probabilities may move.")
sections.prediction_comparison(sel, trace)

st.subheader("Step 4 · One saliency map, before and after")
st.markdown("The same explanation method runs on the full network and on the trace. Where the maps differ, the "
            "full network's map was partly explaining other things that its neurons also respond to.")
sections.saliency_section(sel, walkthrough, trace, title=None)

st.subheader("Step 5 · One neuron, before and after")
st.markdown("A neuron that answers to several unrelated things (a *multifaceted* neuron) shows all of them in a "
            "feature visualization of the full network; on the trace it shows the facet this image used. The "
            "Neurons page draws both for the predicted class, on the image and model chosen here. For a class it "
            "prunes only the classifier, so the picture is still drawn with the network's own features: pruning the "
            "late blocks too made the pictures less like the photo.")
st.page_link("pages/neurons.py", label="Open the Neurons page", icon=":material/psychology:")
