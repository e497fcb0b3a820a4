package org.fhirspine.testserver;

import jakarta.servlet.FilterChain;
import jakarta.servlet.ServletException;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import jakarta.servlet.http.HttpServletResponseWrapper;
import org.springframework.web.filter.OncePerRequestFilter;

import java.io.IOException;

/**
 * HAPI FHIR 8.8.0 answers every in-progress {@code $export-poll-status} with a fixed
 * {@code Retry-After: 120}. A client that honours it waits two minutes per export, which a test
 * suite cannot afford, so this test server replaces the value with a short one and keeps
 * HAPI's own value in {@code X-Hapi-Retry-After} (clients that want to test how they cap long
 * Retry-After values can read that, or start the server with
 * {@code --fhirspine.export-retry-after=keep}).
 */
public class ExportRetryAfterFilter extends OncePerRequestFilter {

	static final String RETRY_AFTER = "Retry-After";
	static final String ORIGINAL_HEADER = "X-Hapi-Retry-After";

	private final String myRetryAfter;

	/** @param theRetryAfter seconds to send instead of HAPI's value, or null to keep HAPI's */
	public ExportRetryAfterFilter(String theRetryAfter) {
		myRetryAfter = theRetryAfter;
	}

	@Override
	protected void doFilterInternal(HttpServletRequest theRequest, HttpServletResponse theResponse, FilterChain theChain)
			throws ServletException, IOException {
		String uri = theRequest.getRequestURI();
		if (myRetryAfter == null || uri == null || !(uri.endsWith("$export-poll-status") || uri.endsWith("%24export-poll-status"))) {
			theChain.doFilter(theRequest, theResponse);
			return;
		}
		theChain.doFilter(theRequest, new HttpServletResponseWrapper(theResponse) {
			@Override
			public void addHeader(String theName, String theValue) {
				if (RETRY_AFTER.equalsIgnoreCase(theName)) {
					super.setHeader(ORIGINAL_HEADER, theValue);
					super.setHeader(RETRY_AFTER, myRetryAfter);
				} else {
					super.addHeader(theName, theValue);
				}
			}

			@Override
			public void setHeader(String theName, String theValue) {
				if (RETRY_AFTER.equalsIgnoreCase(theName)) {
					super.setHeader(ORIGINAL_HEADER, theValue);
					super.setHeader(RETRY_AFTER, myRetryAfter);
				} else {
					super.setHeader(theName, theValue);
				}
			}
		});
	}
}
