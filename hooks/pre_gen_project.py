"""Validate every answer before anything is generated.

Cookiecutter renders this file first, so the answers arrive as one JSON string; the checks live
in template_answers.py at the template's root (unit-tested in tests/test_hooks.py).
"""

import sys

# Rendered by template_answers.NamesExtension: where this template's checkout is.
sys.path.insert(0, r"{{ template_dir }}")

from template_answers import main

if __name__ == "__main__":
    sys.exit(main(r"""{{ cookiecutter | jsonify }}"""))
