import sys

from tools.photos.fetch import main

sys.exit(main())
