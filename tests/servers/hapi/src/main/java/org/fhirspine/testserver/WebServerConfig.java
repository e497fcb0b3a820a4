package org.fhirspine.testserver;

import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.web.context.WebServerInitializedEvent;
import org.springframework.boot.web.embedded.tomcat.TomcatServletWebServerFactory;
import org.springframework.boot.web.servlet.FilterRegistrationBean;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.ApplicationListener;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.InetAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;

/**
 * Embedded Tomcat bound to 127.0.0.1 only, with the FHIR servlet at /fhir/*.
 * With {@code --server.port=0} Tomcat takes any free port; {@code --fhirspine.port-file=PATH}
 * makes the server write the port it got into PATH once it listens.
 */
@Configuration
public class WebServerConfig {

	@Bean
	public TomcatServletWebServerFactory servletWebServerFactory(@Value("${server.port:8080}") int thePort) {
		TomcatServletWebServerFactory factory = new TomcatServletWebServerFactory();
		factory.setAddress(InetAddress.getLoopbackAddress());
		factory.setPort(thePort);
		return factory;
	}

	@Bean
	public FhirServlet fhirServlet() {
		return new FhirServlet();
	}

	@Bean
	public ServletRegistrationBean<FhirServlet> fhirServletRegistration(FhirServlet theServlet) {
		ServletRegistrationBean<FhirServlet> registration = new ServletRegistrationBean<>(theServlet, "/fhir/*");
		registration.setName("fhir");
		registration.setLoadOnStartup(1);
		return registration;
	}

	@Bean
	public FilterRegistrationBean<ExportRetryAfterFilter> exportRetryAfterFilter(
			@Value("${fhirspine.export-retry-after:1}") String theRetryAfter) {
		String value = "keep".equalsIgnoreCase(theRetryAfter.trim()) ? null : theRetryAfter.trim();
		FilterRegistrationBean<ExportRetryAfterFilter> registration =
				new FilterRegistrationBean<>(new ExportRetryAfterFilter(value));
		registration.addUrlPatterns("/fhir/*");
		registration.setName("exportRetryAfter");
		return registration;
	}

	@Bean
	public ApplicationListener<WebServerInitializedEvent> portFileWriter(
			@Value("${fhirspine.port-file:}") String thePortFile) {
		return theEvent -> {
			if (thePortFile.isBlank()) {
				return;
			}
			try {
				Path target = Path.of(thePortFile);
				Path tmp = target.resolveSibling(target.getFileName() + ".tmp");
				Files.writeString(tmp, theEvent.getWebServer().getPort() + "\n", StandardCharsets.US_ASCII);
				Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
			} catch (IOException e) {
				throw new UncheckedIOException(e);
			}
		};
	}
}
