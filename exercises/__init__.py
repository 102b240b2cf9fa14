"""Exercise stubs. Edit these files; `check("N.M")` in a notebook grades them."""
