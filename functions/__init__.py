"""One blueprint per function: decode the trigger, call `shared`, emit the output."""
