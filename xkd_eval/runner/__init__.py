"""Running measurements: answer every task in every arm (``core``), keep the answers in an append-only
store keyed by model, prompt and settings (``store``), and measure forgetting and the gap end to end
(``measure``), with the hearing probe and distribution-level diagnostics beside them."""
