"""One module per component of the stack, each a `Service` the launcher drives."""
