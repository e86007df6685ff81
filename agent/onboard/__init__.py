"""From zero to a pet: `petkeeper init` writes the config and keys, `petkeeper doctor` checks
the whole install."""
