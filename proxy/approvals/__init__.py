"""Human approval of single statements: requests, votes, outcomes, and their audit records."""
