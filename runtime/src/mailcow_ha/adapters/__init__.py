"""One thin module per outside system; each converts its library's errors into mailcow_ha.errors."""
