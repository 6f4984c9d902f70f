import os

from nurture.service import main
from services.analytics.server import serve

# The read model may lag; the accept path and the journeys must not wait for it: on a shared host the
# scheduler gives the fold what the services on the lead's path leave.
NICENESS = 10
os.nice(NICENESS)
main("analytics", serve)
