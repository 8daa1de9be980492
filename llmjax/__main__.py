import sys

from llmjax.cli import main

sys.exit(main())
