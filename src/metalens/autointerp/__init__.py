"""Automated interpretability: explanations of Features, searched for and scored by how well a
simulator predicts the feature's activations from them.

    llm.py        LocalLLM (logits) | EndpointLLM (OpenAI-compatible HTTP); server.py = `metalens serve`
    examples.py   windows, splits, top / stratified / random / negative / hard-negative examples
    explain.py    explainer prompt + robust parsing, k samples
    simulate.py   one-forward-pass simulation (expected value over digit tokens)
    score.py      simulation r, detection and fuzzing AUROC
    search.py     best-of-k on val, scores on test, controls, resumable, results DB
    synthetic.py  ground-truth features with known rules (benchmarks/autointerp.py)
"""
