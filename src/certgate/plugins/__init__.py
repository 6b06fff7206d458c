"""Notification plugins: separate processes that follow access requests on the public API.

    certgate plugin slack|mattermost|webhook --config FILE

    proxy /v1/api/watch?kinds=access_request        (the plugin's own identity, made
         |  snapshot, put, delete                     with `cgctl auth sign --user`)
         v
    base.PluginRunner --RequestInfo--> steps.next_step(request, record) --> Notifier
         |                                                                   (slack.py,
         +-- state.StateFile: request id -> message refs, replies sent,       mattermost.py,
             what each message shows, requester told; saved after every call) webhook.py)

The runner never decides from memory alone: every outbound call is one step, and the
state file says which steps are done, so a restarted plugin repeats nothing it finished
and catches up on what happened while it was down.
"""
