"""mlsmctl, the command line: validate, schema, and (later) get, describe, apply, up."""
