"""Speech adaptation and cross-modal distillation: the frozen-encoder feature cache
(``xkd_eval.models.encoder``), adaptation data (``data``), and the training loop (``train``)."""
