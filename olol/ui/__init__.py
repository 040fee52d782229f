"""The web dashboard served by the proxy at ``/olol/ui`` (:mod:`olol.ui.views`).

Server-rendered Jinja templates (``templates/olol_ui``) and two small static files
(``static/ui.css``, ``static/ui.js``): no build step, nothing fetched from elsewhere.
"""

from olol.ui.views import PREFIX, bp

__all__ = ["PREFIX", "bp"]
