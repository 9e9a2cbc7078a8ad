"""The board: pages for people (an overview worst first, open alerts with snoozing, a
customer, a job), server-rendered with Jinja2 and kept live with htmx, with sign-in by API
key. `pages` holds the pages' routes and `forms` the routes that change something, `frame`
what every page shares (the visit, headers, the live part), `filters` the URL's filters,
`views` what pages show (read through the API's answers), `sessions` the signed cookie and
CSRF tokens; `templates/` and `static/` (htmx vendored, one stylesheet, one small script)
are served by the service itself."""
