"""Automated interpretability: explanations of Features, searched for and scored by how well a
simulator predicts the feature's activations from them.

    llm.py        LocalLLM (logits) | EndpointLLM (OpenAI-compatible HTTP); server.py = `metalens serve`
    examples.py   windows, splits, top / stratified / random / negative / hard-negative examples
    explain.py    prompted explainer: prompt + robust parsing, k samples
    simulate.py   prompted simulator: one-forward-pass simulation (expected value over digit tokens)
    simulator.py  the Simulator interface; TrainedSimulator (LoRA, 11 value tokens), PromptSimulator
    explainer.py  TrainedExplainer (LoRA) | PromptExplainer; best-of-k selection by a simulator
    rules.py      rules with known answers in families (lexical, morphology, orthography, context, ...)
    trainset.py   rule data on real text, held-out families and text sources (JSONL)
    train.py      LoRA training of simulator / explainer: resumable, safetensors checkpoints, curve
    formats.py    store-free JSONL: simulate and explain features given as token strings + values
    score.py      simulation r, detection and fuzzing AUROC (None when undefined)
    search.py     best-of-k on val, scores on test, controls, resumable, results DB
    synthetic.py  ground-truth features with known rules (hand-written sentences, word helpers)
    default/      the shipped simulator and explainer adapters (how they were made: research/autointerp/default-adapters.md)
"""
