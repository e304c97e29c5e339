"""Loss functions: the detection loss here; distillation losses join in issue 3."""
