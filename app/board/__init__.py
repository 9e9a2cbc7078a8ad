"""The board: pages for people (an overview worst first, open alerts with snoozing, a
customer, a job), server-rendered with Jinja2 and kept live with htmx, with sign-in by API
key. `pages` holds the routes, `views` what they show (read through the API's answers),
`sessions` the signed cookie and CSRF tokens; `templates/` and `static/` (htmx vendored,
one stylesheet, one small script) are served by the service itself."""
