"""Who may see what on the Human study page.

* Researchers (designer, study list, results, exports, close/reopen, import) log in with the password whose
  argon2 hash is in ``SPADE_RESEARCHER_PASSWORD_HASH`` (``spade_study.password``); the login lasts for the
  browser session (Streamlit's session state) until "Log out". Without the setting the researcher pages are
  open, but only to a browser on the server's own machine, and the page says so.
* Participants are identified by a signed token in their link (``spade_study.links``), never by a bare id.
"""

from __future__ import annotations

import streamlit as st

from spade.errors import ConfigError
from spade_study.links import ParticipantTokens, study_secret
from spade_study.password import PASSWORD_ENV, configured_hash, verify_password

LOGIN_KEY = "study_researcher_login"
"""Session state: the password hash this session logged in with (a changed setting logs everyone out)."""
PASSWORD_KEY = "study_password"
WRONG_PASSWORD = "Wrong password: the researcher pages stay locked. Ask whoever runs this server for the password."
OPEN_LOCALLY = (f"Open researcher access: no researcher password is set ({PASSWORD_ENV}), so anyone using a "
                "browser on this computer can design studies, read the results and export the answers. Set a "
                "password before other people can reach this server (README, section Human study).")
CLOSED_REMOTELY = (f"The researcher pages are locked: this server has no researcher password ({PASSWORD_ENV}), and "
                   "without one they open only in a browser on the server's own computer. Participants' study "
                   "links work as usual.")


@st.cache_resource(show_spinner=False)
def _tokens(secret: str) -> ParticipantTokens:
    return ParticipantTokens(secret)


def participant_tokens() -> ParticipantTokens:
    """The token signer of the current settings (``SPADE_STUDY_SECRET`` or the data folder's secret file)."""
    return _tokens(study_secret())


def _client_is_local() -> bool:
    # Streamlit reports a loopback connection as None (and an address string for everyone else).
    return not isinstance(st.context.ip_address, str)


def is_researcher() -> bool:
    """Whether this browser session may use the researcher parts (also checked inside their callbacks)."""
    try:
        configured = configured_hash()
    except ConfigError:
        return False
    if configured is None:
        return _client_is_local()
    return st.session_state.get(LOGIN_KEY) == configured


def _log_in(configured: str) -> None:
    password = st.session_state.pop(PASSWORD_KEY, "") or ""
    if verify_password(configured, password):
        st.session_state[LOGIN_KEY] = configured
    else:
        st.session_state.pop(LOGIN_KEY, None)
        st.session_state["study_login_failed"] = True


def _log_out() -> None:
    st.session_state.pop(LOGIN_KEY, None)


def researcher_gate() -> bool:
    """Draw what this session needs before the researcher parts (the login form, a logout button or the open
    access notice) and return whether they may be drawn."""
    try:
        configured = configured_hash()
    except ConfigError as exc:
        st.error(f"The researcher pages are locked: {exc}")
        return False
    if configured is None:
        if _client_is_local():
            st.info(OPEN_LOCALLY, icon=":material/lock_open:")
            return True
        st.error(CLOSED_REMOTELY, icon=":material/lock:")
        return False
    if st.session_state.get(LOGIN_KEY) == configured:
        st.button("Log out", key="study_logout", on_click=_log_out, icon=":material/logout:",
                  help="Locks the designer, the studies and the results again in this browser.")
        return True
    st.subheader("Researcher login", anchor=False)
    st.caption("Designing studies, the list of studies, the results and the exports need the researcher password. "
               "Participants do not log in: they open the study link they were sent.")
    with st.form("study_login", enter_to_submit=True, border=False):
        st.text_input("Researcher password", type="password", key=PASSWORD_KEY)
        st.form_submit_button("Log in", type="primary", icon=":material/login:", on_click=_log_in,
                              args=(configured,))
    if st.session_state.pop("study_login_failed", False):
        st.error(WRONG_PASSWORD)
    return False
